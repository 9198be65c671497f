from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = (("signups", "0001_initial"),)  # tuples: Django copies them into lists

    operations = (
        migrations.CreateModel(
            name="UserAccount",
            fields=[
                ("id", models.CharField(max_length=100, primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=200)),
                ("email", models.CharField(max_length=200, unique=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
        ),
    )

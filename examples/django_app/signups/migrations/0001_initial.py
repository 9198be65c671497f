from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = ()  # tuples: Django copies them into lists

    operations = (
        migrations.CreateModel(
            name="Signup",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=200)),
                ("email", models.CharField(max_length=200)),
                ("user_id", models.CharField(blank=True, default="", max_length=100)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
        ),
    )
